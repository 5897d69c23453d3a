"""Registrations into LLaMA-Factory's own registries (no patching): model groups, mm plugin, template, composite.

Each function is the callback of one hook in ``hooks.py`` and receives the module that defines the registry;
all are idempotent.
"""

from __future__ import annotations

from types import ModuleType

from ..models.constants import MODEL_TYPE

TEMPLATE_NAME = "kimi_audio"
PLUGIN_NAME = "kimi_audio"
MODEL_GROUPS = {
    "Kimi-Audio-7B-Instruct": "moonshotai/Kimi-Audio-7B-Instruct",
    "Kimi-Audio-7B": "moonshotai/Kimi-Audio-7B",
}


def register_model_groups(constants: ModuleType) -> None:
    """Web UI model list: both checkpoints, the template auto-selected, the Chat tab's audio box enabled."""
    if all(name in constants.SUPPORTED_MODELS for name in MODEL_GROUPS):
        return
    source = constants.DownloadSource
    constants.register_model_group(
        models={name: {source.DEFAULT: repo, source.MODELSCOPE: repo} for name, repo in MODEL_GROUPS.items()},
        template=TEMPLATE_NAME,
        multimodal=True,
    )


def register_plugin(mm_plugin: ModuleType) -> None:
    from .mm_plugin import KimiAudioPlugin

    if PLUGIN_NAME not in mm_plugin.PLUGINS:
        mm_plugin.register_mm_plugin(PLUGIN_NAME, KimiAudioPlugin)


def register_kimi_template(template: ModuleType) -> None:
    if TEMPLATE_NAME in template.TEMPLATES:
        return
    from llamafactory.data.formatter import StringFormatter

    from ..models import special_tokens as st
    from .mm_plugin import KimiAudioPlugin
    from .template import KimiAudioTemplate

    template.register_template(
        name=TEMPLATE_NAME,
        format_user=StringFormatter(slots=["{{content}}"]),
        format_assistant=StringFormatter(slots=["{{content}}"]),
        stop_words=[st.TEXT_EOS],
        replace_eos=True,
        mm_plugin=KimiAudioPlugin(image_token=None, video_token=None, audio_token=st.AUDIO_PLACEHOLDER),
        template_class=KimiAudioTemplate,
    )


def register_composite(visual: ModuleType) -> None:
    """Freezing and LoRA scope: Whisper and the MIMO audio branch are the "tower", the VQ adaptor the projector.

    ``lora_target: all`` therefore lands on the 28 decoder layers only; ``freeze_multi_modal_projector: false``
    trains the adaptor in freeze / full mode.
    """
    if MODEL_TYPE in visual.COMPOSITE_MODELS:
        return
    visual._register_composite_model(
        model_type=MODEL_TYPE,
        projector_keys=["model.vq_adaptor"],
        vision_model_keys=["whisper_encoder", "mimo"],
        language_model_keys=["model.layers", "model.embed_tokens", "model.norm", "lm_head"],
        lora_conflict_keys=["vq_adaptor"],
    )
