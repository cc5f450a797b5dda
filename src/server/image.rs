//! CRI v1 `ImageService` over [`ImageStore`]: decode, call one store method, encode.
//!
//! Behaviour follows the CRI proto comments and containerd's CRI plugin:
//! - ListImages: every image, or the one the filter's image spec resolves to.
//! - ImageStatus: an unknown image is an empty response, not an error; `verbose` puts the JSON
//!   image record in `info["info"]`.
//! - PullImage: `image_ref` is the image ID (`sha256:<config digest>`).
//! - RemoveImage: removing what is not there succeeds.
//! - ImageFsInfo: one image filesystem, the image store directory; one container filesystem,
//!   `<root>/containers` (the writable layers' upper dirs).
//!
//! Errors map to gRPC codes in [`status_from_image_error`].

use crate::cri::v1 as cri;
use crate::image::{Image, ImageError, ImageStore, RegistryAuth};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// The ImageService adapter. Serve it with
/// `crate::cri::v1::image_service_server::ImageServiceServer::new(ImageServer::new(images))`.
pub struct ImageServer {
    images: Arc<ImageStore>,
}

impl ImageServer {
    /// Wraps the image store.
    pub fn new(images: Arc<ImageStore>) -> ImageServer {
        ImageServer { images }
    }
}

/// The gRPC status for an image error during `op` on `image` (as the client named it); the code
/// is [`crate::server::status::image_code`]'s.
pub fn status_from_image_error(op: &str, image: &str, e: ImageError) -> Status {
    Status::new(crate::server::status::image_code(&e), format!("{op} {image:?}: {e}"))
}

/// Splits an image config `User` into CRI's `uid` (numeric user) or `username` (named user);
/// a group after `:` is dropped. Empty gives neither (kubelet treats that as root).
pub fn user_of(user: &str) -> (Option<i64>, String) {
    let u = user.split(':').next().unwrap_or("");
    if u.is_empty() {
        return (None, String::new());
    }
    match u.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, u.to_string()),
    }
}

/// The CRI view of an image record.
pub fn to_cri_image(i: &Image) -> cri::Image {
    let (uid, username) = user_of(&i.config.user);
    cri::Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec { image: i.id.clone(), ..Default::default() }),
        pinned: false,
    }
}

fn spec_image(spec: Option<&cri::ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.as_str()) {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(Status::invalid_argument("image.image: must name an image")),
    }
}

fn auth_of(a: cri::AuthConfig) -> RegistryAuth {
    RegistryAuth {
        username: a.username,
        password: a.password,
        auth: a.auth,
        server_address: a.server_address,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    }
}

impl ImageServer {
    /// ListImages' items (also StreamImages'): every image, or those `filter.image` names.
    fn images_matching(&self, filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>, Status> {
        let filter = filter.and_then(|f| f.image).map(|s| s.image).filter(|s| !s.is_empty());
        let images = match filter {
            Some(name) => match self.images.resolve(&name) {
                Ok(found) => found.into_iter().collect(),
                // A filter that is not an image name matches nothing.
                Err(ImageError::InvalidReference(_)) => Vec::new(),
                Err(e) => return Err(status_from_image_error("ListImages", &name, e)),
            },
            None => self.images.list().map_err(|e| status_from_image_error("ListImages", "", e))?,
        };
        Ok(images.iter().map(to_cri_image).collect())
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for ImageServer {
    async fn list_images(&self, req: Request<cri::ListImagesRequest>) -> Result<Response<cri::ListImagesResponse>, Status> {
        Ok(Response::new(cri::ListImagesResponse { images: self.images_matching(req.into_inner().filter)? }))
    }

    type StreamImagesStream = super::liststream::ListStream<cri::StreamImagesResponse>;

    async fn stream_images(&self, req: Request<cri::StreamImagesRequest>) -> Result<Response<Self::StreamImagesStream>, Status> {
        let images = self.images_matching(req.into_inner().filter)?;
        Ok(Response::new(super::liststream::batched(images, |images| cri::StreamImagesResponse { images })))
    }

    async fn image_status(&self, req: Request<cri::ImageStatusRequest>) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let name = spec_image(req.image.as_ref())?;
        let found = match self.images.resolve(name) {
            Ok(found) => found,
            Err(ImageError::InvalidReference(_)) => None,
            Err(e) => return Err(status_from_image_error("ImageStatus", name, e)),
        };
        let Some(image) = found else { return Ok(Response::new(cri::ImageStatusResponse::default())) };
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let json = serde_json::to_string(&image).map_err(|e| Status::internal(format!("ImageStatus {name:?}: encoding info: {e}")))?;
            info.insert("info".to_string(), json);
        }
        Ok(Response::new(cri::ImageStatusResponse { image: Some(to_cri_image(&image)), info }))
    }

    async fn pull_image(&self, req: Request<cri::PullImageRequest>) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = req.into_inner();
        let name = spec_image(req.image.as_ref())?.to_string();
        let image = self
            .images
            .pull(&name, req.auth.map(auth_of))
            .instrument(tracing::info_span!("PullImage", image = %name))
            .await
            .map_err(|e| status_from_image_error("PullImage", &name, e))?;
        Ok(Response::new(cri::PullImageResponse { image_ref: image.id }))
    }

    async fn remove_image(&self, req: Request<cri::RemoveImageRequest>) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let req = req.into_inner();
        let name = spec_image(req.image.as_ref())?;
        match self.images.remove(name).await {
            Ok(()) | Err(ImageError::InvalidReference(_)) => Ok(Response::new(cri::RemoveImageResponse {})),
            Err(e) => Err(status_from_image_error("RemoveImage", name, e)),
        }
    }

    async fn image_fs_info(&self, _req: Request<cri::ImageFsInfoRequest>) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let images = self.images.clone();
        let usage = tokio::task::spawn_blocking(move || images.fs_usage())
            .await
            .map_err(|e| Status::internal(format!("ImageFsInfo: usage task failed: {e}")))?
            .map_err(|e| status_from_image_error("ImageFsInfo", "", e))?;
        // Writable layers live in `<root>/containers/<id>/upper`; the image store is `<root>/images`.
        let containers_dir = usage.mountpoint.parent().unwrap_or(&usage.mountpoint).join("containers");
        let dir = containers_dir.clone();
        let (c_bytes, c_inodes) = tokio::task::spawn_blocking(move || crate::stats::collect::writable_layers_usage(&dir))
            .await
            .map_err(|e| Status::internal(format!("ImageFsInfo: usage task failed: {e}")))?
            .map_err(|e| Status::internal(format!("ImageFsInfo: usage of {}: {e}", containers_dir.display())))?;
        let now = crate::util::now_nanos();
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![cri::FilesystemUsage {
                timestamp: now,
                fs_id: Some(cri::FilesystemIdentifier { mountpoint: usage.mountpoint.to_string_lossy().into_owned() }),
                used_bytes: Some(cri::UInt64Value { value: usage.used_bytes }),
                inodes_used: Some(cri::UInt64Value { value: usage.inodes_used }),
            }],
            container_filesystems: vec![cri::FilesystemUsage {
                timestamp: now,
                fs_id: Some(cri::FilesystemIdentifier { mountpoint: containers_dir.to_string_lossy().into_owned() }),
                used_bytes: Some(cri::UInt64Value { value: c_bytes }),
                inodes_used: Some(cri::UInt64Value { value: c_inodes }),
            }],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cri::image_service_server::ImageService;

    #[test]
    fn users_map_to_uid_or_username() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(user_of("1000"), (Some(1000), String::new()));
        assert_eq!(user_of("0:0"), (Some(0), String::new()));
        assert_eq!(user_of("app"), (None, "app".to_string()));
        assert_eq!(user_of("app:grp"), (None, "app".to_string()));
    }

    #[test]
    fn errors_map_to_codes_naming_the_image() {
        let s = status_from_image_error(
            "PullImage",
            "x:1",
            ImageError::NotFound {
                image: "docker.io/library/x:1".into(),
                registry: "docker.io".into(),
                message: "manifest unknown".into(),
            },
        );
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(s.message().contains("x:1"), "{}", s.message());
        let s = status_from_image_error(
            "PullImage",
            "x",
            ImageError::Unreachable { image: "x".into(), registry: "r".into(), message: "refused".into() },
        );
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn rpcs_over_a_store_with_one_image() {
        let d = tempfile::tempdir().unwrap();
        let state = Arc::new(crate::state::Store::open(&d.path().join("state")).unwrap());
        let id = format!("sha256:{}", "ab".repeat(32));
        let mut rec = Image {
            id: id.clone(),
            repo_tags: vec!["docker.io/library/busybox:latest".into()],
            repo_digests: vec![format!("docker.io/library/busybox@sha256:{}", "cd".repeat(32))],
            size: 42,
            ..Default::default()
        };
        rec.config.user = "app".into();
        state.put(crate::state::IMAGES, &id, &rec).unwrap();
        let store = ImageStore::open(d.path().join("images"), state, Default::default()).unwrap();
        let srv = ImageServer::new(Arc::new(store));
        let spec = |s: &str| Some(cri::ImageSpec { image: s.into(), ..Default::default() });

        let all = srv.list_images(Request::new(cri::ListImagesRequest { filter: None })).await.unwrap().into_inner();
        assert_eq!(all.images.len(), 1);
        assert_eq!(all.images[0].username, "app");
        assert_eq!(all.images[0].spec.as_ref().unwrap().image, id);
        let filtered = srv
            .list_images(Request::new(cri::ListImagesRequest { filter: Some(cri::ImageFilter { image: spec("busybox") }) }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(filtered.images.len(), 1);
        let none = srv
            .list_images(Request::new(cri::ListImagesRequest { filter: Some(cri::ImageFilter { image: spec("other") }) }))
            .await
            .unwrap()
            .into_inner();
        assert!(none.images.is_empty());

        let st =
            srv.image_status(Request::new(cri::ImageStatusRequest { image: spec("busybox"), verbose: true })).await.unwrap().into_inner();
        assert_eq!(st.image.unwrap().id, id);
        assert!(st.info["info"].contains(&id));
        let st =
            srv.image_status(Request::new(cri::ImageStatusRequest { image: spec("nope"), verbose: false })).await.unwrap().into_inner();
        assert!(st.image.is_none());
        let e = srv.image_status(Request::new(cri::ImageStatusRequest { image: spec(""), verbose: false })).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), "image.image: must name an image");
        let e = srv.pull_image(Request::new(cri::PullImageRequest { image: None, auth: None, sandbox_config: None })).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = srv
            .pull_image(Request::new(cri::PullImageRequest { image: spec("Bad/Name"), auth: None, sandbox_config: None }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("Bad/Name"));

        let fs = srv.image_fs_info(Request::new(cri::ImageFsInfoRequest {})).await.unwrap().into_inner();
        assert_eq!(fs.image_filesystems.len(), 1);
        assert!(fs.image_filesystems[0].fs_id.as_ref().unwrap().mountpoint.ends_with("images"));
        assert!(fs.image_filesystems[0].timestamp > 0);
        assert_eq!(fs.container_filesystems.len(), 1);
        assert!(fs.container_filesystems[0].fs_id.as_ref().unwrap().mountpoint.ends_with("containers"));

        srv.remove_image(Request::new(cri::RemoveImageRequest { image: spec(&id[7..19]) })).await.unwrap();
        srv.remove_image(Request::new(cri::RemoveImageRequest { image: spec("busybox") })).await.unwrap();
        let all = srv.list_images(Request::new(cri::ListImagesRequest { filter: None })).await.unwrap().into_inner();
        assert!(all.images.is_empty());
    }
}
