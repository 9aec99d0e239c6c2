"""The prompts the labeler sends the model to answer and to refine (the judge's own prompts live in
`evolvd.judge_prompts`)."""

from __future__ import annotations

from evolvd.labeling.answers import AnswerKind

FINISH = "Think step by step, then end with one line: The answer is <your answer>."


def sample_prompt(prompt: str, kind: AnswerKind, chain_of_thought: bool = True) -> str:
    """Chain of thought with a marked conclusion, so the vote reads every path at its answer; or,
    without chain of thought, the prompt as sent."""
    return prompt if kind == "free_form" or not chain_of_thought else f"{prompt}\n\n{FINISH}"


def direct_completion(answer: str) -> str:
    """The direct-answer training format (LMSI mixes it with the reasoning paths)."""
    return f"The answer is {answer}."


def refine_prompt(prompt: str, answer: str, critique: str, kind: AnswerKind) -> str:
    finish = "" if kind == "free_form" else f"\n{FINISH}"
    return (
        f"Question: {prompt}\n\nDraft answer:\n{answer}\n\nCritique of the draft:\n{critique}\n\n"
        f"Write an improved answer to the question.{finish}"
    )
