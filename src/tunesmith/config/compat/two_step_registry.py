"""What the two-step framework (saturncloud/llm) registers, as data: prompt methods, the prompt
format and default LoRA settings it picks per `base_model`.

Sources: llm/prompt.py (DefaultPrompt), llm/qa/prompts.py (ZeroShotQA, FewShotQA,
StandaloneQuestion), llm/model_configs.py (the model registry). Lookups are by exact model id,
as the framework's are (a trailing slash is ignored); anything else gets the generic entry.
"""
from __future__ import annotations

QA_SYSTEM = ("Given the following contexts and a question, create a final answer. Only use the given context to arrive at "
             "your answer. If you don't know the answer, just say that you don't know. Don't make up an answer.")
_CONTRACT = ["No Waiver. Failure or delay in exercising any right or remedy under this Agreement shall not constitute a "
             "waiver of such (or any other)  right or remedy.11.7 Severability.",
             "This Agreement is governed by English law and the parties submit to the exclusive jurisdiction of the "
             "English courts in relation to any dispute (contractual or non-contractual) concerning this Agreement save "
             "that either party may apply to any court for an injunction or other relief to protect its Intellectual "
             "Property Rights.",
             "(b) if Google believes, in good faith, that the Distributor has violated or caused Google to violate any "
             "Anti-Bribery Laws (as  defined in Clause 8.5) or that such a violation is reasonably likely to occur,"]
_SPEECH = ["Madam Speaker, Madam Vice President, our First Lady and Second Gentleman. Members of Congress and the Cabinet. "
           "Justices of the Supreme Court. My fellow Americans. Last year COVID-19 kept us apart. This year we are finally "
           "together again",
           "More support for patients and families. To get there, I call on Congress to fund ARPA-H, the Advanced Research "
           "Projects Agency for Health. It's based on DARPA—the Defense Department project that led to the Internet, GPS, "
           "and so much more.  ARPA-H will have a singular purpose—to drive breakthroughs in cancer, Alzheimer's, "
           "diabetes, and more."]
_ARPA = "The Advanced Research Projects Agency for Health will drive breakthroughs in cancer, Alzheimer's, diabetes, and more."

# Prompt method -> tunesmith `data.prompt` keys (the user's kwargs override these, as in the framework).
PROMPTS: dict[str, dict] = {
    "Prompt": {},
    "DefaultPrompt": {"input_template": "Input: {text}", "context_template": "Context: {text}",
                      "response_template": "Response: {text}"},
    "ZeroShotQA": {"system_message": QA_SYSTEM, "context_template": "Context: {text}",
                   "input_template": "Question: {text}", "response_template": "Answer: {text}"},
    "StandaloneQuestion": {
        "system_message": "Given the following conversation and a followup question, rephrase the followup question as "
                          "a standalone question with any relevant context. The final answer should be a concise search "
                          "query that will find results relevant to the followup question.",
        "input_template": "Followup Question: {text}", "response_template": "Standalone Question: {text}",
        "context_pair_template": "Question: {question}\nAnswer: {answer}",
        "examples": [
            {"context": ["What is the purpose of ARPA-H?", _ARPA], "input": "When was it created?",
             "response": "When was the Advanced Research Projects Agency for Health created?"},
            {"context": ["What is the purpose of ARPA-H?", _ARPA, "When was it created?",
                         "The Advanced Research Projects Agency for Health was created on March 15, 2022"],
             "input": "What are some of the other breakthroughs?",
             "response": "In addition to cancer, Alzheimer's, and diabetes, what are some other breakthroughs driven by "
                         "the Advanced Research Projects Agency for Health?"},
            {"context": ["Which state/country's law governs the interpretation of the contract?",
                         "This Agreement is governed by English law."],
             "input": "Who are the primary parties bound by the contract?",
             "response": "Who are the primary parties bound by the contract?"},
        ]},
}
PROMPTS["FewShotQA"] = {**PROMPTS["ZeroShotQA"], "examples": [
    {"context": _CONTRACT, "input": "Which state/country's law governs the interpretation of the contract?",
     "response": "This Agreement is governed by English law."},
    {"context": _SPEECH, "input": "What did the president say about Michael Jackson?", "response": "I don't know"},
    {"context": [_SPEECH[0] + ".", _SPEECH[1]], "input": "What is the purpose of ARPA-H?", "response": _ARPA},
]}

# Framework format class -> tunesmith built-in format.
FORMATS = {"PromptFormat": "two_step", "UserAssistantFormat": "user_assistant", "VicunaFormat": "vicuna",
           "Llama2Format": "llama2", "ChatMLFormat": "chatml", "DollyFormat": "dolly", "RedpajamaFormat": "redpajama",
           "TogetherLlama2Format": "together_llama2", "AlpacaFormat": "alpaca", "PlainFormat": "plain"}

_LLAMA_LORA = {"r": 8, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
_PEFT_DEFAULT_LORA = {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0}  # peft's LoraConfig() defaults


def _family(ids: list[str], fmt: str, lora: dict) -> dict[str, tuple[str, dict]]:
    return {i: (fmt, lora) for i in ids}


REGISTRY: dict[str, tuple[str, dict]] = {
    **_family(["lmsys/vicuna-7b-v1.5", "lmsys/vicuna-13b-v1.5", "lmsys/vicuna-33b-v1.5"], "vicuna", _LLAMA_LORA),
    **_family(["meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-hf"], "two_step", _LLAMA_LORA),
    **_family(["meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-13b-chat-hf", "meta-llama/Llama-2-70b-chat-hf"],
              "llama2", _LLAMA_LORA),
    **_family(["togethercomputer/LLaMA-2-7B-32K"], "two_step", _PEFT_DEFAULT_LORA),
    **_family(["togethercomputer/LLaMA-2-7B-32K-Instruct"], "together_llama2", _PEFT_DEFAULT_LORA),
    **_family(["togethercomputer/RedPajama-INCITE-7B-Instruct", "togethercomputer/RedPajama-INCITE-7B-Chat"],
              "redpajama", _PEFT_DEFAULT_LORA),
    **_family(["mosaicml/mpt-7b-instruct", "mosaicml/mpt-30b-instruct"], "dolly", _PEFT_DEFAULT_LORA),
    **_family(["mosaicml/mpt-7b-chat", "mosaicml/mpt-30b-chat"], "chatml", _PEFT_DEFAULT_LORA),
}


def registry_entry(base_model: str) -> tuple[str, dict, bool]:
    """(format, default LoRA settings, found) for a base_model, as the framework's registry answers."""
    key = base_model.rstrip("/") if base_model else base_model
    if key in REGISTRY:
        fmt, lora = REGISTRY[key]
        return fmt, dict(lora), True
    return "two_step", dict(_PEFT_DEFAULT_LORA), False
