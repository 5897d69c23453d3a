"""Every LLaMA-Factory touch point lives here (registrations first, then the named patches of ``patches.py``)."""
