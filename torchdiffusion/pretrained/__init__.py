"""The embedded text-to-image model: its tokenizer files (:mod:`.tokenizer`); the model folder and the recipe that
trains it come with issue 13."""
