"""The peers of the benchmark's `peers` section (OpenVINO, stable-diffusion.cpp): setup, runners, conversion."""
