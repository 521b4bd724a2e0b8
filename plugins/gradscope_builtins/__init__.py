"""Built-in gradscope checks, registered through the gradscope.plugins entry-point group."""
