"""Train a logistic regression on the iris data and log it to MLflow."""

import argparse

import mlflow
import mlflow.sklearn
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--max-iter", type=int, default=200)
    args = parser.parse_args()

    features, labels = load_iris(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.25, random_state=0
    )
    model = LogisticRegression(C=args.C, max_iter=args.max_iter)
    model.fit(x_train, y_train)
    accuracy = accuracy_score(y_test, model.predict(x_test))

    mlflow.log_params({"C": args.C, "max_iter": args.max_iter})
    mlflow.log_metric("accuracy", accuracy)
    mlflow.sklearn.log_model(model, name="model", input_example=x_test[:2])
    print(f"accuracy={accuracy:.3f}")


if __name__ == "__main__":
    main()
