//! The dashboard page at `/`, its script and styles, and the uPlot chart library, vendored in
//! `dashboard/vendor/` from the npm package `dashboard/package.json` pins (a test checks they
//! are the same bytes): all embedded in the binary, nothing to deploy beside it, and no
//! JavaScript toolchain needed to build it.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!("../dashboard/index.html");
const STYLE: &str = include_str!("../dashboard/style.css");
const UPLOT_JS: &str = include_str!("../dashboard/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../dashboard/vendor/uPlot.min.css");
/// The page's scripts, in the order it loads them: the shared part, one per tab, the wiring.
const SCRIPTS: [(&str, &str); 6] = [
    ("common.js", include_str!("../dashboard/common.js")),
    ("analytics.js", include_str!("../dashboard/analytics.js")),
    ("governance.js", include_str!("../dashboard/governance.js")),
    ("views.js", include_str!("../dashboard/views.js")),
    ("search.js", include_str!("../dashboard/search.js")),
    ("app.js", include_str!("../dashboard/app.js")),
];

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
    for (name, body) in SCRIPTS {
        config.route(
            &format!("/dashboard/{name}"),
            web::get().to(asset(body, "text/javascript; charset=utf-8")),
        );
    }
}

#[cfg(test)]
mod tests {
    /// The page shows what users and senders wrote (tags, aliases, payloads) as text only:
    /// no script of it may parse a string as markup.
    #[test]
    fn no_script_writes_markup() {
        for (name, body) in super::SCRIPTS {
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(
                    !body.contains(sink),
                    "{name} uses {sink}: set textContent instead"
                );
            }
        }
    }
}
