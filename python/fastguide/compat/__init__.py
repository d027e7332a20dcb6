"""Drop-in replacements for other libraries' entry points (import fastguide.compat.guided_diffusion
in place of guided_diffusion.script_util)."""
