"""Pipelines: scheduler + models -> images, saved and loaded as Diffusers pipeline folders."""
