"""Neural networks: UNets and autoencoders, with Diffusers' constructor arguments and state-dict keys."""
