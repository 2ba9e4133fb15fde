"""The command-line tools: the `funnel` command and the local process stack it starts."""
