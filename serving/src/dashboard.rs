//! The dashboard page at `/`, its script and styles, and the uPlot chart library, vendored in
//! `dashboard/vendor/` from the npm package `dashboard/package.json` pins (a test checks they
//! are the same bytes): all embedded in the binary, nothing to deploy beside it, and no
//! JavaScript toolchain needed to build it.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!("../dashboard/index.html");
const APP: &str = include_str!("../dashboard/app.js");
const STYLE: &str = include_str!("../dashboard/style.css");
const UPLOT_JS: &str = include_str!("../dashboard/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../dashboard/vendor/uPlot.min.css");

/// Mounts the page and its assets.
pub fn routes(config: &mut web::ServiceConfig) {
    let asset = |body: &'static str, content_type: &'static str| {
        move || async move {
            HttpResponse::Ok()
                .content_type(content_type)
                .insert_header((header::CACHE_CONTROL, "no-cache"))
                .body(body)
        }
    };
    config
        .route("/", web::get().to(asset(INDEX, "text/html; charset=utf-8")))
        .route(
            "/dashboard/app.js",
            web::get().to(asset(APP, "text/javascript; charset=utf-8")),
        )
        .route(
            "/dashboard/style.css",
            web::get().to(asset(STYLE, "text/css; charset=utf-8")),
        )
        .route(
            "/dashboard/uplot.js",
            web::get().to(asset(UPLOT_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/dashboard/uplot.css",
            web::get().to(asset(UPLOT_CSS, "text/css; charset=utf-8")),
        );
}
