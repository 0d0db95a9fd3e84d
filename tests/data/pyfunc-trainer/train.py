"""Log a pyfunc model that doubles its input: a training run in a small environment."""

import mlflow
import mlflow.pyfunc


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return model_input * 2


def main() -> None:
    mlflow.log_param("factor", 2)
    mlflow.pyfunc.log_model(name="model", python_model=Doubler())
    print("logged")


if __name__ == "__main__":
    main()
