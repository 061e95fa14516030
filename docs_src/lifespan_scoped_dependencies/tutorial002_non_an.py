from fastapi import Depends, FastAPI


class Engine:
    def __init__(self, url: str) -> None:
        self.url = url
        print(f"Engine for {url} created")

    def dispose(self) -> None:
        print("Engine disposed")


class Session:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.open = True


async def get_engine():
    engine = Engine("sqlite:///./app.db")
    yield engine
    engine.dispose()


def get_session(engine: Engine = Depends(get_engine, scope="lifespan")):
    session = Session(engine)
    yield session
    session.open = False


app = FastAPI()


@app.get("/items/")
async def read_items(session: Session = Depends(get_session)):
    return {"database_url": session.engine.url, "session_open": session.open}
