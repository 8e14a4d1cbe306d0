"""Many tasks on one frozen backbone: the adapter bank (see :mod:`medpeft.bank.bank`)."""

from medpeft.bank.bank import AdapterBank
from medpeft.bank.errors import BadInput, UnknownTask, WrongModality
from medpeft.bank.group import BankGroup
from medpeft.bank.tasks import TaskInfo

__all__ = ["AdapterBank", "BadInput", "BankGroup", "TaskInfo", "UnknownTask", "WrongModality"]
