"""The error every layer raises for a setting or checkpoint it cannot serve exactly: it names the field."""


class ConfigError(ValueError):
    pass
