"""Pure tensor math for diffusion: schedules, grids, prediction conversions, solver updates. No modules, no I/O."""
