"""Hand-made passages from the seed documents, for the answering and citation tests."""

from __future__ import annotations

from qa_app.schema import Passage, ScoredPassage, passage_id

ENERGY = (
    "11. Nous considérons que la sécurité de l’approvisionnement en énergie est l’une des "
    "questions prioritaires figurant à l’ordre du jour international. Il est donc essentiel "
    "que les États producteurs et les États consommateurs dialoguent et coopèrent. C’est "
    "pourquoi nous soulignons que la sécurité énergétique est un élément fondamental de la "
    "sécurité économique et sociale et du développement durable."
)
CICA_DAY = (
    "23. Nous décidons de faire du 5 octobre la Journée du CICA afin de commémorer l’idée "
    "lancée par le Président de la République du Kazakhstan lors de la quarante-septième "
    "session de l’Assemblée générale des Nations Unies en 1992, de convoquer une conférence "
    "au sommet pour l’interaction et les mesures de confiance en Asie."
)
TERRORISM = (
    "16. Les États membres condamnent de manière inconditionnelle et sans équivoque le "
    "terrorisme sous toutes ses formes et manifestations. La menace que fait peser le "
    "terrorisme n'a cessé de croître au cours des 10 dernières années. Le terrorisme sous "
    "toutes ses formes est une menace transnationale qui met en danger la vie des individus."
)
LETTER = (
    "Je vous serais reconnaissant de bien vouloir faire distribuer la présente lettre et son "
    "annexe comme document de l’Assemblée générale, au titre des points 12, 42, 84, 97, 107 "
    "et 108 de l’ordre du jour de sa soixantième session, et du Conseil de sécurité."
)


def make_passage(text: str, source: str = "001_15cd4e670d3e8e09.txt", position: int = 0,
                 title: str = "Déclaration du deuxième Sommet", para_no: str = "") -> Passage:
    return Passage(id=passage_id(source, position), source=source, title=title, section="",
                   para_no=para_no, text=text, start=0, end=len(text), position=position)


def scored(*texts: str, source: str = "001_15cd4e670d3e8e09.txt") -> list[ScoredPassage]:
    """ScoredPassages in the order given, best first."""
    return [
        ScoredPassage(make_passage(t, source, i, para_no=t.split(".", 1)[0] if t[:2].isdigit()
                                   else ""), 1.0 - i / 10)
        for i, t in enumerate(texts)
    ]
