"""A benchmark of your own, in a dozen lines: capital cities, scored by whether the reply names the
right one. A grid uses it with

    eval:
      benchmarks: [gsm8k, capitals]
      custom:
        capitals: {module: "examples.my_benchmark:Capitals"}

(docs/own-data.md walks through it).
"""

from ablate.evals.custom import GenerativeBenchmark

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Canada": "Ottawa",
            "Egypt": "Cairo", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo"}


class Capitals(GenerativeBenchmark):
    category = "geography"  # its own column in the report, beside the paper's six
    version = 1  # bump when the items, prompt or score change: old results are then not reused
    max_new_tokens = 32

    def items(self, protocol, data_dir):
        return [{"item_id": country, "country": country, "answer": city}
                for country, city in CAPITALS.items()]

    def prompt(self, item):
        return f"What is the capital of {item['country']}? Answer with the city's name."

    def score(self, item, reply):
        return float(item["answer"].lower() in reply.lower())
