"""Helpers of aggregate.base: citations narrowed to the supporting sentence keep exact offsets and the
sentence's own line numbers; answers stop where the model starts echoing its prompt."""
from ctxflow.aggregate.base import best_span, echo_stops
from ctxflow.chunking import chunk_text


def test_a_narrowed_citation_reports_the_lines_of_its_sentence():
    text = "Intro line.\r\nThe owner is Zoë Müller.\nShe runs the café.\rIt opened in 1990.\n\nThe end."
    chunk = chunk_text(text, "sentences", doc_id="d", size=200)[0]
    assert chunk.meta["line"] == 1
    cit = best_span(chunk, "It opened in 1990.")
    assert text[cit.start:cit.end] == cit.text and cit.text.startswith("It opened in 1990")
    assert (cit.meta["line"], cit.meta["end_line"]) == (4, 4)
    cit = best_span(chunk, "Zoë Müller")
    assert cit.text.startswith("The owner is Zoë Müller") and cit.meta["line"] == 2


def test_echo_stops_come_from_the_templates_own_labels():
    assert echo_stops("Context:\n{context}\n\nQuestion: {question}\nAnswer briefly.") == ["\nContext:", "\nQuestion:"]
    assert echo_stops("Use {context} to answer {question}") == []
    assert echo_stops("Context: {context}\nQuestion: {question}\nReply as:\nAnswer: <text>\nSources: <lines>") == [
        "\nContext:", "\nQuestion:"]  # labels of the expected output are not stops
