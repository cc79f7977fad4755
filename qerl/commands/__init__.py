"""qerl's own subcommands besides fit/validate/test, one module each."""

#: qerl's own subcommands -> "module:function(argv) -> int"
TOOLS = {
    "list": "qerl.commands.list_components:main",
    "quantize": "qerl.commands.quantize:main",
    "eval": "qerl.commands.evaluate:main",
    "demo": "qerl.commands.demo:main",
    "export": "qerl.commands.export:main",
    "version": "qerl.commands.version:main",
}
