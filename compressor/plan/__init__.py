"""The plan: every choice of a run left to the tool (criterion, compensation, scope, schedule,
alignment, factoring, device) made once, from the options, the model and the machine, each
with its reason."""

from .facts import DataFacts, Machine, ModelFacts, ThisMachine, model_facts
from .options import DEFAULTS, Options
from .plan import Decision, Plan, check, plan

__all__ = ["DEFAULTS", "DataFacts", "Decision", "Machine", "ModelFacts", "Options", "Plan",
           "ThisMachine", "check", "model_facts", "plan"]
