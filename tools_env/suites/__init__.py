"""Built-in task suites; importing this package registers them."""

from tools_env.suites import atlas  # noqa: F401
