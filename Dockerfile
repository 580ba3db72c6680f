FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# Not root: Kubernetes pods require it (runAsNonRoot, deploy/k8s), and nothing here needs root.
RUN useradd --uid 10001 --no-create-home chatq
USER 10001
ENV PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["gunicorn", "web:create_app()", "--config", "gunicorn.conf.py"]
