"""Built-in task suites; importing this package registers them."""

from tools_env.suites import atlas, bank, math_problems, relay, retrieval, shop  # noqa: F401
