"""
The demo served by the README's main command: a small notes API whose database
engine is a lifespan-scoped dependency.

The engine (and its connection pool) is created once when the app starts, the
schema is created then, every request borrows a connection from it through a
normal per-request dependency, and the engine is disposed when the app shuts down
(Ctrl-C). The database is SQLite in build/demo.db unless DATABASE_URL names
another one, for example postgresql+psycopg://user:password@127.0.0.1/notes.
"""

import os
from collections.abc import Iterator
from typing import Annotated

import sqlalchemy
from pydantic import BaseModel

import fastapi
from fastapi import Depends, FastAPI, HTTPException

DEFAULT_DATABASE_URL = "sqlite:///build/demo.db"

metadata = sqlalchemy.MetaData()
notes = sqlalchemy.Table(
    "notes",
    metadata,
    sqlalchemy.Column("id", sqlalchemy.Integer, primary_key=True),
    sqlalchemy.Column("text", sqlalchemy.String(500), nullable=False),
)


class NoteIn(BaseModel):
    text: str


class Note(NoteIn):
    id: int


def get_engine() -> Iterator[sqlalchemy.Engine]:
    url = sqlalchemy.make_url(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    connect_args = {"check_same_thread": False} if url.drivername == "sqlite" else {}
    engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    metadata.create_all(engine)
    shown = url.render_as_string(hide_password=True)
    print(f"lifespan dependency: engine for {shown} created, schema ready", flush=True)
    yield engine
    engine.dispose()
    print("lifespan dependency: engine disposed", flush=True)


Engine = Annotated[sqlalchemy.Engine, Depends(get_engine, scope="lifespan")]


def get_connection(engine: Engine) -> Iterator[sqlalchemy.Connection]:
    with engine.begin() as connection:
        yield connection


Connection = Annotated[sqlalchemy.Connection, Depends(get_connection)]

app = FastAPI(title="Notes: lifespan-scoped dependencies demo")


@app.get("/")
def read_info(engine: Engine) -> dict[str, str | int]:
    return {
        "fastapi": fastapi.__version__,
        "database": engine.dialect.name,
        "engine_id": id(engine),
    }


@app.post("/notes/", status_code=201)
def create_note(note: NoteIn, connection: Connection) -> Note:
    result = connection.execute(notes.insert().values(text=note.text))
    (note_id,) = result.inserted_primary_key or (0,)
    return Note(id=note_id, text=note.text)


@app.get("/notes/")
def read_notes(connection: Connection) -> list[Note]:
    rows = connection.execute(notes.select().order_by(notes.c.id))
    return [Note(id=row.id, text=row.text) for row in rows]


@app.get("/notes/{note_id}")
def read_note(note_id: int, connection: Connection) -> Note:
    row = connection.execute(notes.select().where(notes.c.id == note_id)).first()
    if row is None:
        raise HTTPException(status_code=404, detail="Note not found")
    return Note(id=row.id, text=row.text)
