"""The local-dataset example's preprocessing function, for the llm-foundry-style config beside it:
an ARC-Easy row {query, choices, gold} -> {prompt, response}. Same output as llm-foundry's
finetune_example/preprocessing.py:multiple_choice."""


def multiple_choice(row: dict) -> dict:
    if not isinstance(row["choices"], list) or not isinstance(row["gold"], int):
        raise ValueError("expected choices: list and gold: int")
    options = "".join(f"\n - {choice}" for choice in row["choices"])
    return {"prompt": f"{row['query']}\nOptions:{options}\nAnswer: ", "response": row["choices"][row["gold"]]}
