// Starts Swagger UI on this server's OpenAPI document (kept out of the HTML: no inline script).
window.addEventListener('load', () => {
  const element = document.getElementById('swagger-ui');
  window.ui = SwaggerUIBundle({
    url: element.dataset.openapiUrl,
    dom_id: '#swagger-ui',
    deepLinking: true,
    tryItOutEnabled: true,
  });
});
