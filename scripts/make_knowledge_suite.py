"""Write evals/quality/knowledge.yaml: the log-likelihood accuracy suite (multiple choice and cloze, scored as
lm-eval scores them: the choice whose continuation the model finds most likely).

Every item is a plain-text context and four continuations, one right; the right one's place is drawn
from a fixed seed, so always picking one place scores 25 % (chance). Facts chosen so that a small
trained base model knows many of them: capitals, opposites, small sums, plurals, colours, Russian
capitals. Written for this project (public domain). Run with Python 3.11 to reproduce the file.
"""

import pathlib
import random

OUT = pathlib.Path(__file__).resolve().parents[1] / "evals" / "quality" / "knowledge.yaml"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Russia": "Moscow", "China": "Beijing", "Egypt": "Cairo", "Greece": "Athens", "Portugal": "Lisbon",
    "Austria": "Vienna", "Poland": "Warsaw", "Hungary": "Budapest", "Ireland": "Dublin", "Norway": "Oslo",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Belgium": "Brussels",
    "the Netherlands": "Amsterdam", "the United Kingdom": "London", "Canada": "Ottawa", "Mexico": "Mexico City",
    "Argentina": "Buenos Aires", "Peru": "Lima", "Chile": "Santiago", "Kenya": "Nairobi", "India": "New Delhi",
    "Thailand": "Bangkok", "South Korea": "Seoul", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad",
    "Cuba": "Havana", "Ukraine": "Kyiv", "the Czech Republic": "Prague", "Australia": "Canberra",
    "Indonesia": "Jakarta", "the Philippines": "Manila", "Vietnam": "Hanoi",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "day": "night", "fast": "slow", "happy": "sad", "old": "young",
    "open": "closed", "light": "dark", "wet": "dry", "rich": "poor", "early": "late", "hard": "soft",
    "strong": "weak", "full": "empty", "high": "low", "clean": "dirty", "true": "false", "win": "lose",
    "love": "hate", "push": "pull", "buy": "sell", "north": "south", "left": "right", "inside": "outside",
}
PLURALS = {"mouse": "mice", "child": "children", "man": "men", "woman": "women", "foot": "feet", "tooth": "teeth",
           "goose": "geese", "person": "people", "ox": "oxen", "leaf": "leaves", "knife": "knives", "wolf": "wolves"}
PLURAL_WRONG = {"mouse": ["mouses", "mousen", "meese"], "child": ["childs", "childes", "childern"],
                "man": ["mans", "manes", "mens"], "woman": ["womans", "womanes", "womens"],
                "foot": ["foots", "feets", "footes"], "tooth": ["tooths", "teeths", "toothes"],
                "goose": ["gooses", "geeses", "goosen"], "person": ["persons", "peoples", "personen"],
                "ox": ["oxes", "oxs", "oxies"], "leaf": ["leafs", "leafes", "leavs"],
                "knife": ["knifes", "knifs", "knivs"], "wolf": ["wolfs", "wolfes", "wolvs"]}
COLOURS = {"The colour of grass is": "green", "The colour of a ripe banana is": "yellow",
           "The colour of snow is": "white", "The colour of the clear sky is": "blue",
           "The colour of coal is": "black", "The colour of a ripe tomato is": "red"}
RU_CAPITALS = {"Франции": "Париж", "Германии": "Берлин", "Италии": "Рим", "Испании": "Мадрид", "Японии": "Токио",
               "Китая": "Пекин", "Египта": "Каир", "Греции": "Афины", "Англии": "Лондон", "России": "Москва"}


def items() -> list[dict]:
    rng = random.Random(31)
    out: list[dict] = []

    def add(id_: str, context: str, right: str, wrong: list[str]) -> None:
        choices = [right, *wrong[:3]]
        rng.shuffle(choices)
        out.append({"id": id_, "context": context, "choices": [" " + c for c in choices],
                    "answer": choices.index(right)})

    def others(pool: list[str], right: str) -> list[str]:
        return rng.sample([p for p in pool if p != right], 3)

    caps = list(CAPITALS.values())
    for country, city in CAPITALS.items():
        add(f"capital-{country.replace('the ', '').replace(' ', '-').lower()}", f"The capital of {country} is", city,
            others(caps, city))
    opp = list(OPPOSITES.values())
    for word, right in OPPOSITES.items():
        add(f"opposite-{word}", f"The opposite of {word} is", right, others(opp, right))
    for k in range(20):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        right = a + b
        wrong = rng.sample([n for n in range(max(0, right - 4), right + 5) if n != right], 3)
        add(f"sum-{k}", f"{a} + {b} =", str(right), [str(n) for n in wrong])
    for word, right in PLURALS.items():
        add(f"plural-{word}", f"The plural of {word} is", right, PLURAL_WRONG[word])
    colours = list(COLOURS.values())
    for k, (context, right) in enumerate(COLOURS.items()):
        add(f"colour-{k}", context, right, others(colours, right))
    ru = list(RU_CAPITALS.values())
    for country, city in RU_CAPITALS.items():
        add(f"ru-capital-{len(out)}", f"Столица {country} —", city, others(ru, city))
    return out


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main() -> None:
    rows = items()
    lines = [
        "# Log-likelihood accuracy suite (scripts/make_knowledge_suite.py writes it): each item is a plain-text",
        "# context and four continuations; a side answers with the continuation it gives the highest",
        "# log-probability (acc) or the highest per character (acc_norm), as lm-eval scores multiple choice.",
        "# Chance is 25 %. Written for this project (public domain).",
        "name: knowledge",
        f"description: {len(rows)} items (capitals, opposites, sums, plurals, colours, Russian capitals), 4 choices each",
        "items:",
    ]
    for r in rows:
        lines.append(f"  - id: {r['id']}")
        lines.append(f"    context: {_quote(r['context'])}")
        lines.append("    choices: [" + ", ".join(_quote(c) for c in r["choices"]) + "]")
        lines.append(f"    answer: {r['answer']}")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(rows)} items")


if __name__ == "__main__":
    main()
