"""JSON bodies of the HTTP API (they make up the OpenAPI spec at ``/openapi.json``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from medpeft.runs.predict import Predictions

TASK_FIELD = "task"


class Task(BaseModel):
    """One task adapter of the bank."""

    name: str = Field(description="Task name (its folder in the adapter directory)")
    method: str = Field(description="Tuning method of the adapter (lora, mora, ...)")
    labels: list[str] = Field(description="Label names, in the order of the probabilities")
    modalities: list[str] = Field(description="Inputs the task reads: one file field each")
    task: str = Field(description="multiclass (softmax) or multilabel (sigmoid)")
    loaded: bool = Field(description="Whether the adapter is on the backbone now")
    bytes: int = Field(description="Size of the adapter's tensors")


class TaskList(BaseModel):
    tasks: list[Task]
    skipped: dict[str, str] = Field(
        default_factory=dict, description="Task folders of the directory not served -> why"
    )


class Prediction(BaseModel):
    """Probabilities of one sample."""

    task: str = Field(description="The task that answered")
    labels: list[str] = Field(description="Label names, in score order")
    probabilities: dict[str, float] = Field(description="Label -> probability")
    prediction: str = Field(description="Most likely label (multilabel: labels above 0.5, joined by '|')")
    missing: list[str] = Field(description="Modalities of the task that were not uploaded")

    @classmethod
    def of(cls, task: Task, scores: Sequence[float], given: Sequence[str]) -> Prediction:
        """The answer for ``scores`` (label order) of ``task`` given files for ``given``."""
        decision = Predictions([], task.labels, [], task.task).decision(scores)
        return cls(
            task=task.name,
            labels=task.labels,
            probabilities=dict(zip(task.labels, (float(p) for p in scores))),
            prediction=decision,
            missing=[m for m in task.modalities if m not in given],
        )


class Health(BaseModel):
    status: str = Field(description="'ok' while the server accepts requests")
    tasks: int = Field(description="Tasks in the adapter directory")
    loaded: int = Field(description="Task adapters held in memory")
    queue_depth: int = Field(description="Samples waiting for a batch")


class Error(BaseModel):
    detail: str = Field(description="What went wrong, in one line")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error status codes."""
    meaning = {
        400: "Malformed request", 401: "Missing or wrong bearer token", 404: "Unknown task",
        413: "Upload too large", 415: "Not a multipart/form-data body", 422: "Unreadable image, wrong modality or missing field",
        503: "Prediction queue full; retry later",
    }
    return {code: {"model": Error, "description": meaning[code]} for code in codes}


PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [TASK_FIELD],
                    "properties": {TASK_FIELD: {"type": "string", "description": "Task name"}},
                    "additionalProperties": {
                        "type": "string",
                        "format": "binary",
                        "description": "One image file per modality, the field named after it "
                        "(PNG, JPEG, DICOM, NIfTI); a modality left out counts as missing",
                    },
                },
            }
        },
    }
}
