"""Three small French documents for the fault, bad-input and security tests: quick to embed,
each with one fact a question can retrieve."""

from __future__ import annotations

from pathlib import Path

DOCS = {
    "sommet.txt": (
        "Déclaration du premier Sommet de la Conférence\n\n"
        "1. Le premier Sommet de la Conférence s'est tenu à Almaty, au Kazakhstan, en juin "
        "2002, en présence des chefs d'État des pays membres.\n\n"
        "2. Les dirigeants adoptent l'Acte d'Almaty, qui définit les mesures de confiance "
        "entre les États membres dans les domaines militaire et politique.\n"
    ),
    "energie.txt": (
        "Communiqué sur la sécurité énergétique\n\n"
        "1. Les États membres considèrent la sécurité des approvisionnements en énergie comme "
        "une priorité de leur coopération régionale.\n\n"
        "2. Ils décident de créer un groupe d'experts chargé des oléoducs et des gazoducs "
        "qui traversent plusieurs pays de la région.\n"
    ),
    "eau.md": (
        "# Note sur la gestion de l'eau\n\n"
        "1. La Conférence encourage le partage des données hydrologiques entre les pays "
        "riverains des grands fleuves d'Asie centrale.\n\n"
        "2. Un atelier sur l'irrigation économe en eau se tiendra à Tachkent, en Ouzbékistan, "
        "au printemps prochain.\n"
    ),
}
QUESTION = "Où s'est tenu le premier Sommet de la Conférence ?"
ANSWER_SOURCE = "sommet.txt"  # the document that answers QUESTION
ANSWER_WORD = "Almaty"


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
