"""The bundled corpus of the ``retrieval`` suite: short encyclopedia entries about a fictional world.

Generated deterministically from a fixed seed when imported (no download, no data file), so every
machine has the same documents. Entities link to each other (a person was born in a city, a city lies on
a river), which is what two-hop questions need. Names share syllables on purpose: a keyword search has
to rank the right entry above look-alikes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

SEED = 20240917
_SYL = [
    "ka",
    "lo",
    "ven",
    "dri",
    "mar",
    "tos",
    "el",
    "run",
    "sa",
    "bel",
    "or",
    "qui",
    "zan",
    "pe",
    "hal",
    "ni",
]
_PROFESSIONS = ["painter", "engineer", "composer", "astronomer", "poet", "architect", "botanist", "chemist"]
_WORKS = {
    "painter": ["the mural cycle", "the portrait series"], "engineer": ["the tidal pump", "the steam crane"],
    "composer": ["the harbour symphony", "the winter cantata"], "astronomer": ["the comet catalogue", "the star atlas"],
    "poet": ["the river elegies", "the salt sonnets"], "architect": ["the glass arcade", "the north cathedral"],
    "botanist": ["the fern herbarium", "the orchid survey"], "chemist": ["the indigo dye", "the cold lamp"],
}  # fmt: skip
_SEAS = ["Grey Sea", "Amber Bay", "Northern Gulf", "Quiet Ocean"]
_PROVINCES = ["Eastmarch", "Lowfen", "Highcrest", "Saltreach", "Mirewood"]


@dataclass
class Document:
    doc_id: str
    title: str
    text: str
    facts: dict[str, str] = field(default_factory=dict)


def _name(rng: random.Random, used: set[str], parts: int) -> str:
    while True:
        name = "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()
        if name not in used and len(name) > 3:
            used.add(name)
            return name


def build_corpus(
    seed: int = SEED, n_rivers: int = 12, n_cities: int = 30, n_people: int = 80
) -> list[Document]:
    rng = random.Random(seed)
    used: set[str] = set()
    docs: list[Document] = []
    rivers = []
    for _ in range(n_rivers):
        name = _name(rng, used, 2)
        length, sea = str(rng.randint(120, 2900)), rng.choice(_SEAS)
        facts = {"length": length, "sea": sea}
        text = f"The {name} is a river {length} km long. It rises in the hills and flows into the {sea}."
        docs.append(Document(f"river-{name.lower()}", f"{name} (river)", text, facts))
        rivers.append(name)
    cities = []
    for _ in range(n_cities):
        name = _name(rng, used, 2) + rng.choice(["burg", "mouth", "ford", "holm"])
        river, year = rng.choice(rivers), str(rng.randint(1100, 1899))
        province, pop = rng.choice(_PROVINCES), str(rng.randint(12, 950))
        facts = {"river": river, "founded": year, "province": province, "population": pop}
        text = (f"{name} is a city in the province of {province}. It lies on the {river} river and was "
                f"founded in {year}. About {pop} thousand people live there.")  # fmt: skip
        docs.append(Document(f"city-{name.lower()}", name, text, facts))
        cities.append(name)
    for _ in range(n_people):
        name = f"{_name(rng, used, 2)} {_name(rng, used, 3)}"
        job = rng.choice(_PROFESSIONS)
        city, year, work = rng.choice(cities), str(rng.randint(1700, 1990)), rng.choice(_WORKS[job])
        facts = {"profession": job, "birthplace": city, "born": year, "work": work}
        article = "an" if job[0] in "aeiou" else "a"
        text = f"{name} was {article} {job} born in {city} in {year}. {name.split()[0]} is best known for {work}."
        docs.append(Document(f"person-{name.lower().replace(' ', '-')}", name, text, facts))
    return docs


CORPUS: list[Document] = build_corpus()
BY_TITLE: dict[str, Document] = {d.title: d for d in CORPUS}
