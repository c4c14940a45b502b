"""workflow-agent: runs workflow steps on a remote host for workflowd."""
