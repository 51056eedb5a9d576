"""``medagent index build`` and ``medagent index query``: retrieval indexes from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medagent.cli.terminal import safe
from medagent.errors import MedagentError

index_app = typer.Typer(help="Build and query retrieval indexes (text documents, images with reports).",
                        no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
errors = Console(stderr=True)

Kind = Literal["text", "image"]


def _fail(exc: MedagentError) -> typer.Exit:
    errors.print(f"[red]error[/] {exc.code}: {safe(exc.message)}", soft_wrap=True)
    return typer.Exit(code=2)


def _loader() -> Any:
    from medagent.config import Settings
    from medagent.imaging import Deidentifier, ImageLoader, load_or_create_secret

    settings = Settings()
    secret = load_or_create_secret(settings.home, settings.deid_secret)
    return ImageLoader(Deidentifier(secret), limits=settings.limits, workspace=settings.workspace)


def _guess_kind(corpus: Path) -> Kind:
    from medagent.retrieval.corpus import TEXT_SUFFIXES

    if corpus.is_file():
        return "image" if corpus.suffix.lower() == ".csv" else "text"
    has_text = corpus.is_dir() and any(p.suffix.lower() in TEXT_SUFFIXES for p in corpus.rglob("*") if p.is_file())
    return "text" if has_text else "image"


def _quiet_model_loading() -> None:
    """transformers draws its own weight-loading bar; the command line shows one progress bar only."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_progress_bar()


def _progress(description: str, total: int) -> tuple[Progress, Any]:
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=errors, transient=False)
    task = progress.add_task(description, total=total)
    return progress, lambda done: progress.advance(task, done)


@index_app.command("build")
def build(
    corpus: Annotated[Path, typer.Argument(help="Folder of .txt/.md or images; a .jsonl text corpus; a .csv image "
                                                "manifest (path, report, labels 'A|B', record).")],
    out: Annotated[Path, typer.Option("--out", help="Index folder to write (replaced atomically).")],
    kind: Annotated[str | None, typer.Option("--kind", help="text or image (default: from the corpus).")] = None,
    embedder: Annotated[str, typer.Option(help="Image embedder: classical (weightless) or rad-dino.")] = "classical",
    encoder_dir: Annotated[Path | None, typer.Option(help="Folder of the rad-dino files.")] = None,
    card: Annotated[Path | None, typer.Option(help="An image_text_retrieval card: index the image CSV's images "
                                                   "and reports with its SigLIP/CLIP towers (image -> report, "
                                                   "text -> image search).")] = None,
    source: Annotated[str | None, typer.Option(help="Source to record where a document names none.")] = None,
    license_: Annotated[str, typer.Option("--license", help="Licence to record where a document names none.")]
    = "unspecified",
    modality: Annotated[str | None, typer.Option(help="Modality of PNG/JPEG/NIfTI images (e.g. DX).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the build report as JSON.")] = False,
) -> None:
    """Embed a corpus and write a faiss + SQLite index with its manifest."""
    from medagent.retrieval.build import build_image_index, build_text_index
    from medagent.retrieval.corpus import read_image_manifest, read_text_corpus
    from medagent.retrieval.factory import image_embedder, text_embedder

    chosen = kind or _guess_kind(corpus)
    if chosen not in ("text", "image"):
        raise typer.BadParameter("--kind is text or image")
    try:
        if card is not None:
            _image_text_index(corpus, card, out, source, license_, modality, as_json)
            return
        if chosen == "text":
            documents = read_text_corpus(corpus, source=source, license=license_)
            _quiet_model_loading()
            progress, advance = _progress("embedding texts", len(documents))
            with progress:
                report = build_text_index(documents, text_embedder(), out, progress=advance)
        else:
            entries = read_image_manifest(corpus)
            encoder = image_embedder(embedder, encoder_dir=encoder_dir)
            if embedder != "classical":
                _quiet_model_loading()
            progress, advance = _progress("embedding images", len(entries))
            with progress:
                report = build_image_index(entries, _loader(), encoder, out, source=source or "local image collection",
                                           license=license_, modality=modality, progress=advance)
    except MedagentError as exc:
        raise _fail(exc) from None
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        return
    console.print(f"[green]indexed[/] {report.indexed} {report.kind} documents with {report.embedder.name} "
                  f"({report.embedder.dimension}-d) into {escape(str(out))}")
    if report.skipped or report.duplicates:
        codes = ", ".join(f"#{s.position} {s.code}" for s in report.skipped[:10])
        console.print(f"[yellow]skipped[/] {len(report.skipped)} unreadable ({codes or 'none'}), "
                      f"{report.duplicates} duplicates")


def _image_text_index(corpus: Path, card_file: Path, out: Path, source: str | None, license_: str,
                      modality: str | None, as_json: bool) -> None:
    from medagent.config import Settings
    from medagent.families.card import load_card
    from medagent.families.image_text import ImageTextEncoder, build_image_text_index, check_card
    from medagent.retrieval.corpus import read_image_manifest

    card = check_card(load_card(card_file))
    if card.untrained_test_only and not Settings().allow_untrained_test_only:
        raise typer.BadParameter("the card's untrained_test_only needs MEDAGENT_ALLOW_UNTRAINED_TEST_ONLY=1")
    entries = read_image_manifest(corpus)
    _quiet_model_loading()
    progress, advance = _progress("embedding images and reports", len(entries))
    with progress:
        report = build_image_text_index(entries, _loader(), ImageTextEncoder(card, device=Settings().device), out,
                                        source=source or "local image collection", license=license_,
                                        modality=modality, progress=advance)
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        return
    console.print(f"[green]indexed[/] {report.images.indexed} images and {report.reports.indexed} reports with "
                  f"{report.images.embedder.name} ({report.images.embedder.dimension}-d) into {escape(str(out))}")


@index_app.command("query")
def query(
    index_dir: Annotated[Path, typer.Argument(help="An index folder written by `medagent index build`.")],
    text: Annotated[str | None, typer.Argument(help="Text to search a text index with.")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="Image to search an image index with.")] = None,
    k: Annotated[int | None, typer.Option("--k", min=1, max=100, help="Most neighbours to return (adaptive k "
                                                                     "may return fewer).")] = None,
    exclude_record: Annotated[str | None, typer.Option(help="Leave out documents of this record key.")] = None,
    modality: Annotated[str | None, typer.Option(help="Modality of a PNG/JPEG/NIfTI query image.")] = None,
    encoder_dir: Annotated[Path | None, typer.Option(help="Folder of the rad-dino files.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the retrieval as JSON.")] = False,
) -> None:
    """Search an index with a text or an image."""
    from medagent.retrieval.factory import open_retriever
    from medagent.retrieval.image_embedders import ClassicalImageEmbedder
    from medagent.retrieval.retriever import ImageRetriever, TextRetriever

    if (text is None) == (image is None):
        raise typer.BadParameter("give either a query text or --image FILE")
    try:
        retriever = open_retriever(index_dir, encoder_dir=encoder_dir)
        if not isinstance(retriever.embedder, ClassicalImageEmbedder):
            _quiet_model_loading()
        try:
            if isinstance(retriever, TextRetriever):
                if text is None:
                    raise typer.BadParameter("this is a text index: give a query text")
                result = retriever.search(text, k_max=k, exclude_record_key=exclude_record)
            else:
                assert isinstance(retriever, ImageRetriever)
                if image is None:
                    raise typer.BadParameter("this is an image index: give --image FILE")
                record = _loader().load(image, modality=modality)
                result = retriever.search(record, k_max=k, exclude_record_key=exclude_record)
        finally:
            retriever.close()
    except MedagentError as exc:
        raise _fail(exc) from None
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    table = Table(title=f"{result.k_chosen} of at most {result.k_max} neighbours (adaptive k)")
    for column in ("rank", "doc id", "score", "labels", "source", "text"):
        table.add_column(column, overflow="fold")
    for rank, hit in enumerate(result.hits, start=1):
        table.add_row(str(rank), safe(hit.doc_id), f"{hit.score:.3f}", safe(", ".join(hit.labels)),
                      safe(hit.source), safe((hit.snippet or "")[:160]))
    console.print(table)
    if result.neighbour_label_scores:
        console.print("neighbour labels: " + safe(json.dumps(result.neighbour_label_scores)))
    if result.excluded_self:
        console.print("the query's own record was left out")


if __name__ == "__main__":
    index_app(prog_name="medagent index")
