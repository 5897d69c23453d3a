"""``python -m llamafactory_kimi_audio.cli``: same as the ``kimi-audio-lf`` command."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
