"""``kimi-audio-lf webui-args RECIPE.yaml``: a training recipe as LlamaBoard arguments for the Web UI's *Load
arguments* button (``integration/llamaboard.py``)."""

from __future__ import annotations

import argparse
import os

HELP = "write a training recipe (examples/kimi_lora_80gb.yaml, ...) as Web UI arguments ('Load arguments' button)"
EXAMPLES = """examples:
  cd my_project && kimi-audio-lf webui-args examples/kimi_lora_80gb.yaml   # -> llamaboard_config/kimi_lora_80gb.yaml
  llamafactory-cli webui    # from the same folder; Train tab: Config path kimi_lora_80gb.yaml, then Load arguments

LlamaBoard never saves model paths in its arguments: type the checkpoint folder into "Model path" once.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("recipe", metavar="RECIPE", help="a training YAML (do_train: true, stage: sft)")
    parser.add_argument(
        "--out", help="file to write (default: llamaboard_config/<recipe name>.yaml here, where the Web UI lists it)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing file")


def run(args: argparse.Namespace) -> int:
    from ..integration.llamaboard import read_recipe, write_llamaboard_args

    path = write_llamaboard_args(args.recipe, args.out, args.force)
    model = read_recipe(args.recipe).get("model_name_or_path")
    print(f"wrote {path}")
    print(
        f"Web UI (llamafactory-cli webui started in {os.getcwd()}): Train tab -> Config path "
        f"{os.path.basename(path) if not args.out else os.path.abspath(path)} -> Load arguments; "
        f"then set Model path to {model} (LlamaBoard keeps model paths per user, not in saved arguments)"
    )
    return 0
