"""The llm-foundry local-dataset example's preprocessing function: ARC-Easy multiple choice ->
{prompt, response}. The row keeps `choices` and `gold`, which `tunesmith eval` uses to rank the
choices by log-likelihood."""


def multiple_choice(row: dict) -> dict:
    options = "".join(f"\n - {choice}" for choice in row["choices"])
    return {
        "prompt": f"{row['query']}\nOptions:{options}\nAnswer: ",
        "response": row["choices"][row["gold"]],
    }
