"""Built-in task plugins, registered in setup.cfg under `workflow.tasks`."""
