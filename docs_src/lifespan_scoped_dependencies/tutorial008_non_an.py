import os

import asyncpg
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel


class ItemIn(BaseModel):
    name: str


class Item(ItemIn):
    id: int


async def get_pool():
    pool = await asyncpg.create_pool(
        os.environ["DATABASE_URL"], min_size=2, max_size=10
    )
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, name text NOT NULL)"
    )
    yield pool
    await pool.close()


async def get_connection(pool: asyncpg.Pool = Depends(get_pool, scope="lifespan")):
    async with pool.acquire() as connection:
        yield connection


app = FastAPI()


@app.post("/items/", status_code=201)
async def create_item(
    item: ItemIn, connection: asyncpg.Connection = Depends(get_connection)
) -> Item:
    row = await connection.fetchrow(
        "INSERT INTO items (name) VALUES ($1) RETURNING id, name", item.name
    )
    return Item(**row)


@app.get("/items/{item_id}")
async def read_item(
    item_id: int, connection: asyncpg.Connection = Depends(get_connection)
) -> Item:
    row = await connection.fetchrow("SELECT id, name FROM items WHERE id = $1", item_id)
    if row is None:
        raise HTTPException(status_code=404, detail="Item not found")
    return Item(**row)
