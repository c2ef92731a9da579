from tunesmith.config.load import load_config, parse_overrides
from tunesmith.config.schema import Config, DataConfig, SourceConfig

__all__ = ["Config", "DataConfig", "SourceConfig", "load_config", "parse_overrides"]
