"""Noise schedulers: small adapters over :mod:`torchdiffusion.core` with Diffusers' classes and configs."""
