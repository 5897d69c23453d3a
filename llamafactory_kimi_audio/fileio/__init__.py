"""Reading the files users hand in, shared by ``data/``, ``eval/``, ``integration/`` and ``cli/``: audio (soundfile),
text files of any encoding, ``dataset_info.json``; atomic writes. Imports nothing above it.
"""
