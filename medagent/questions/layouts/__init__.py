"""One module per public question layout; each exposes ``load(source: Path, reader: QuestionReader)``
yielding :class:`~medagent.questions.model.Question` objects (see :mod:`medagent.questions.layouts.base`)."""
