"""Put the autoload .pth and its trampoline module at the site-packages root for editable installs too.

Regular wheels get it from ``force-include`` in pyproject.toml; hatchling leaves
that out of editable wheels, so this hook adds it there.
"""
from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class AutoloadPthHook(BuildHookInterface):
    def initialize(self, version, build_data):
        if version == "editable":
            build_data["force_include_editable"]["src/torchdevice_autoload.pth"] = "torchdevice_autoload.pth"
            build_data["force_include_editable"]["src/_torchdevice_trampoline.py"] = "_torchdevice_trampoline.py"
