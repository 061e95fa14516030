from fastapi import Depends, FastAPI


class Settings:
    database_url = "sqlite:///./app.db"


class Engine:
    def __init__(self, url: str) -> None:
        self.url = url
        print(f"Engine for {url} created")

    def connect(self) -> "Session":
        return Session(self)

    def dispose(self) -> None:
        print("Engine disposed")


class Session:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.open = True

    def close(self) -> None:
        self.open = False


def get_settings():
    return Settings()


async def get_engine(settings: Settings = Depends(get_settings)):
    engine = Engine(settings.database_url)
    yield engine
    engine.dispose()


def get_session(engine: Engine = Depends(get_engine, scope="lifespan")):
    session = engine.connect()
    yield session
    session.close()


app = FastAPI()


@app.get("/items/")
async def read_items(session: Session = Depends(get_session)):
    return {"database_url": session.engine.url, "session_open": session.open}
