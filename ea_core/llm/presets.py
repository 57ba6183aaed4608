"""Known OpenAI-compatible endpoints, so a user picks a name instead of typing a URL.

Each preset gives the base URL of the provider's OpenAI-compatible chat API, the environment
variable its key is conventionally read from, and an example model. Local servers (Ollama,
vLLM, llama.cpp) need no key. URLs are the providers' documented ones when written; any other
OpenAI-compatible URL works too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("openai", "OpenAI", "https://api.openai.com/v1", "OPENAI_API_KEY", "gpt-4o-mini"),
        Preset("deepseek", "DeepSeek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", "deepseek-chat"),
        Preset(
            "qwen",
            "Qwen (Alibaba DashScope, compatible mode)",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
            "DASHSCOPE_API_KEY",
            "qwen-plus",
        ),
        Preset("glm", "Zhipu GLM (BigModel)", "https://open.bigmodel.cn/api/paas/v4", "ZHIPUAI_API_KEY", "glm-4-flash"),
        Preset(
            "doubao",
            "Volcengine Doubao (Ark)",
            "https://ark.cn-beijing.volces.com/api/v3",
            "ARK_API_KEY",
            "doubao-seed-1-6-flash-250615",
            example_price_unknown=True,  # listed in CNY, tiered by prompt length
        ),
        Preset("openrouter", "OpenRouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "openai/gpt-4o-mini"),
        Preset(
            "together",
            "Together AI",
            "https://api.together.xyz/v1",
            "TOGETHER_API_KEY",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        ),
        Preset("ollama", "Ollama (local)", "http://localhost:11434/v1", None, "qwen2.5:7b-instruct"),
        Preset("vllm", "vLLM server (local)", "http://localhost:8000/v1", None, "Qwen/Qwen2.5-7B-Instruct"),
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
    """True for endpoints on this machine (no key needed, no per-token price)."""
    if not base_url:
        return False
    host = (urlparse(base_url).hostname or "").lower()
    return host in LOCAL_HOSTS or host.startswith("127.")
