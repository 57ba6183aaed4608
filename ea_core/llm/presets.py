"""Known OpenAI-compatible endpoints, so a user picks a name instead of typing a URL.

Each preset gives the base URL of the provider's OpenAI-compatible chat API, the environment
variable its key is conventionally read from, and an example model. Local servers (Ollama,
vLLM, llama.cpp) need no key. URLs are the providers' documented ones when written; any other
OpenAI-compatible URL works too.

Images: `vision_model` names a model of the preset's provider that takes images (None: none
known), and `model_accepts_images` says whether a model name is known to take images (GPT-4o
family, Qwen-VL, GLM-4V, Doubao vision, LLaVA ...), known to be text-only (refused before any
request, see `ea_core.llm.base.refuse_images`), or unknown (tried; an endpoint refusing the image
stops the stage with a message saying so).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import re
from typing import Any, Optional
from urllib.parse import urlparse

from ea_core.errors import ConfigError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "0.0.0.0", "::1"}


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    base_url: str
    key_env: Optional[str]  # None: no key needed (local servers)
    example_model: str
    # True: the example model's price is not in the default table (cost.DEFAULT_PRICES), e.g. it is
    # listed in another currency or tiered by prompt length; give it with --price-in/--price-out.
    example_price_unknown: bool = False
    # An example model of this provider that takes images (a vision LM); None: none known.
    vision_model: Optional[str] = None

    @property
    def example_accepts_images(self) -> bool:
        return bool(model_accepts_images(self.example_model))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("openai", "OpenAI", "https://api.openai.com/v1", "OPENAI_API_KEY", "gpt-4o-mini",
               vision_model="gpt-4o-mini"),
        Preset("deepseek", "DeepSeek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", "deepseek-chat"),
        Preset(
            "qwen",
            "Qwen (Alibaba DashScope, compatible mode)",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
            "DASHSCOPE_API_KEY",
            "qwen-plus",
            vision_model="qwen-vl-plus",
        ),
        Preset("glm", "Zhipu GLM (BigModel)", "https://open.bigmodel.cn/api/paas/v4", "ZHIPUAI_API_KEY", "glm-4-flash",
               vision_model="glm-4v-flash"),
        Preset(
            "doubao",
            "Volcengine Doubao (Ark)",
            "https://ark.cn-beijing.volces.com/api/v3",
            "ARK_API_KEY",
            "doubao-seed-1-6-flash-250615",
            example_price_unknown=True,  # listed in CNY, tiered by prompt length
            vision_model="doubao-1-5-vision-pro-32k-250115",
        ),
        Preset("openrouter", "OpenRouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "openai/gpt-4o-mini",
               vision_model="openai/gpt-4o-mini"),
        Preset(
            "together",
            "Together AI",
            "https://api.together.xyz/v1",
            "TOGETHER_API_KEY",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            vision_model="meta-llama/Llama-3.2-11B-Vision-Instruct-Turbo",
        ),
        Preset("ollama", "Ollama (local)", "http://localhost:11434/v1", None, "qwen2.5:7b-instruct",
               vision_model="llava:7b"),
        Preset("vllm", "vLLM server (local)", "http://localhost:8000/v1", None, "Qwen/Qwen2.5-7B-Instruct",
               vision_model="Qwen/Qwen2-VL-7B-Instruct"),
        Preset("llamacpp", "llama.cpp server (local)", "http://localhost:8080/v1", None, "default"),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called `name` (case-insensitive); ConfigError listing the known ones otherwise."""
    key = name.strip().lower().replace("-", "").replace("_", "").replace(".", "")
    aliases = {"dashscope": "qwen", "zhipu": "glm", "bigmodel": "glm", "ark": "doubao", "volcengine": "doubao"}
    key = aliases.get(key, key)
    if key not in PRESETS:
        raise ConfigError(f"Unknown LM endpoint preset {name!r}. Known: {', '.join(PRESETS)}.")
    return PRESETS[key]


def is_local_url(base_url: Optional[str]) -> bool:
    """True for endpoints on this machine: no key needed, and nothing said about money (such an
    endpoint may be a proxy to a paid API; prices are decided by `ea_core.llm.spec`)."""
    if not base_url:
        return False
    host = (urlparse(base_url).hostname or "").lower()
    return host in LOCAL_HOSTS or host.startswith("127.")


# Model-name patterns (lower case, searched in the name without a vendor/ prefix). Vision first:
# "qwen-vl-max" is a vision model although "qwen-max" is a text one.
_VISION_PATTERNS = (
    r"^gpt-4o", r"^gpt-4\.1", r"^gpt-4-turbo", r"^gpt-5", r"^o[13](?!-mini)(-|$)", r"^o4-mini", r"^chatgpt-4o", r"vision", r"[-_.:]vl\b",
    r"\bvl[-_.:]", r"qwen[0-9.]*-?vl", r"qvq", r"glm-?4(\.\d+)?v", r"glm-4\.5v", r"llava", r"bakllava", r"minicpm-?v",
    r"pixtral", r"gemma-?3", r"llama-?3\.2-(11|90)b", r"llama3\.2-vision", r"llama-?4", r"internvl", r"moondream",
    r"doubao.*(vision|seed-1[-.]6)", r"claude-3", r"claude-(sonnet|opus|haiku)-4", r"gemini",
)
_TEXT_PATTERNS = (
    r"^gpt-3\.5", r"^deepseek-(chat|reasoner|coder)", r"^qwen-(turbo|plus|max|long)", r"qwen[0-9.]*[-:]?\d*b?[-:]?instruct",
    r"^qwen[0-9.]*:", r"qwen[0-9.]*-\d+b", r"^glm-4-(flash|plus|air|long)", r"^glm-4$", r"llama-?3(\.[013])?-\d+b",
    r"^llama3(\.[013])?(:|$)", r"mistral-(7b|small|large)", r"mixtral", r"smollm", r"phi-?[23]", r"^deepseek-r1",
)


def model_accepts_images(model: str) -> Optional[bool]:
    """True when `model` is known to take images, False when known to be text-only, None unknown."""
    name = str(model or "").strip().lower()
    tail = name.split("/", 1)[-1] if "/" in name else name
    if any(re.search(p, tail) for p in _VISION_PATTERNS):
        return True
    if any(re.search(p, tail) for p in _TEXT_PATTERNS):
        return False
    return None
