"""The option every module of hxinfra.hxd has: which hxctl to run (one description, merged by ansible-doc)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  hxctl:
    description: The hxctl to run, a path or a name looked up in C(PATH).
    type: str
    default: hxctl
"""
