"""The tasks the pool can run, by name."""

from models.options import OptionError
from models.tasks.base import Plan, RunContext, Task, every_item, no_progress
from models.tasks.doodle import Doodle
from models.tasks.dream import Dream
from models.tasks.fix import Fix
from models.tasks.stylize import Stylize

TASKS: dict[str, Task] = {task.name: task for task in (Stylize(), Dream(), Fix(), Doodle())}

__all__ = ["TASKS", "OptionError", "Plan", "RunContext", "Task", "every_item", "no_progress"]
