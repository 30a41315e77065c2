"""Settings of the shop, read from a YAML file."""
import yaml

DEFAULTS = {"currency": "EUR", "tax_rate": 0.2}


def load_config(path):
    """Load the YAML settings file and fill in the defaults."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    return {**DEFAULTS, **data}


def currency_symbol(config):
    """The symbol printed before prices."""
    return {"EUR": "€", "USD": "$"}.get(config["currency"], config["currency"])
