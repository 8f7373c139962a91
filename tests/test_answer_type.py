from qa_app.answer_type import asks_for_money, missing_answer_type, states_money


def test_money_questions_in_french_and_english():
    for q in ("What was the total cost of the 2006 summit?", "How much money did Kazakhstan spend?",
              "Quel a été le coût du sommet ?", "Combien a coûté la réunion ?",
              "Quel est le budget du secrétariat ?", "Quel montant les États ont-ils versé ?"):
        assert asks_for_money(q), q
    for q in ("Quand la Thaïlande a-t-elle adhéré à la CICA ?", "Who chaired CICA in 2017?",
              "Comment le secrétariat est-il financé ?", "Quel prix Nobel a-t-il reçu ?"):
        assert not asks_for_money(q), q


def test_amounts_of_money():
    for t in ("un budget de 2,5 millions de dollars", "USD 300,000", "1 200 000 tenge",
              "€ 45", "5 milliards de roubles", "costing $3m"):
        assert states_money(t), t
    for t in ("Le deuxième Sommet s'est tenu en 2006.", "18 États membres", "le 4 juin 2002"):
        assert not states_money(t), t


def test_missing_answer_type_needs_one_passage_with_an_amount():
    q = "What did the 2006 summit cost?"
    assert missing_answer_type(q, ["The summit was held in Almaty in 2006."]) == "money"
    assert missing_answer_type(q, ["Held in 2006.", "It cost 2 million dollars."]) is None
    assert missing_answer_type("When was the summit held?", ["Held in 2006."]) is None
