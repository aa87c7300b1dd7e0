//! The io_uring backend: a regular file, a partition or a whole block device
//! opened with `O_DIRECT`, one ring per queue (per core).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use super::{
    heap_buffer, Completion, Device, DeviceInfo, IoBuffer, IoOp, Queue, SetupError, SubmitError,
};
use crate::sys::{blockdev, ring::UringQueue};

/// Minimum I/O size for regular files: 4 KiB satisfies `O_DIRECT` on every
/// common file system (the logical block size of the disk below is at most that).
const FILE_MIN_IO_BYTES: u32 = 4096;

/// How to open a device.
#[derive(Clone, Debug)]
pub struct UringOptions {
    /// For regular files: create the file if missing and use this many bytes
    /// of it, growing it (sparse) when shorter. Ignored for block devices.
    pub file_size_bytes: Option<u64>,
    pub queue_depth: u32,
    pub max_io_bytes: u32,
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            file_size_bytes: None,
            queue_depth: 128,
            max_io_bytes: 8 << 20,
        }
    }
}

pub struct UringDevice {
    info: Arc<DeviceInfo>,
    file: Arc<File>,
}

impl UringDevice {
    pub fn open(path: &Path, options: &UringOptions) -> Result<UringDevice, SetupError> {
        let name = path.display().to_string();
        let fail = |message: String| SetupError {
            device: name.clone(),
            message,
        };
        let is_block = std::fs::metadata(path)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        let create = !is_block && options.file_size_bytes.is_some();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    fail(format!("cannot open with O_DIRECT ({e}); put the file on a file system with direct I/O (tmpfs has none)"))
                } else {
                    fail(format!("cannot open: {e}"))
                }
            })?;
        let (size_bytes, min_io_bytes) = if is_block {
            let size = blockdev::size_bytes(&file)
                .map_err(|e| fail(format!("cannot read its size: {e}")))?;
            let sector = blockdev::logical_sector_bytes(&file)
                .map_err(|e| fail(format!("cannot read its sector size: {e}")))?;
            (size, sector)
        } else {
            let current = file
                .metadata()
                .map_err(|e| fail(format!("cannot stat: {e}")))?
                .len();
            let size = match options.file_size_bytes {
                Some(wanted) => {
                    if current < wanted {
                        file.set_len(wanted)
                            .map_err(|e| fail(format!("cannot size to {wanted} bytes: {e}")))?;
                    }
                    wanted
                }
                None => current,
            };
            (size, FILE_MIN_IO_BYTES)
        };
        let size_bytes = size_bytes - size_bytes % u64::from(min_io_bytes);
        if size_bytes == 0 {
            return Err(fail("has no usable space (size 0)".into()));
        }
        if options.queue_depth == 0 || options.max_io_bytes < min_io_bytes {
            return Err(fail(format!(
                "queue depth {} must be >= 1 and max I/O {} >= the minimum I/O {min_io_bytes}",
                options.queue_depth, options.max_io_bytes
            )));
        }
        let info = DeviceInfo {
            name,
            size_bytes,
            min_io_bytes,
            max_io_bytes: options.max_io_bytes - options.max_io_bytes % min_io_bytes,
            queue_depth: options.queue_depth,
        };
        Ok(UringDevice {
            info: Arc::new(info),
            file: Arc::new(file),
        })
    }
}

impl Device for UringDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc_buffer(&self, len: usize) -> Result<IoBuffer, SetupError> {
        heap_buffer(&self.info, len)
    }

    fn open_queue(&self) -> Result<Box<dyn Queue>, SetupError> {
        let queue =
            UringQueue::new(self.file.clone(), self.info.clone()).map_err(|e| SetupError {
                device: self.info.name.clone(),
                message: format!(
                    "cannot set up an io_uring of depth {}: {e}",
                    self.info.queue_depth
                ),
            })?;
        Ok(Box::new(UringDeviceQueue(queue)))
    }
}

struct UringDeviceQueue(UringQueue);

impl Queue for UringDeviceQueue {
    fn submit(&mut self, op: IoOp) -> Result<(), SubmitError> {
        self.0.submit(op)
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        self.0.poll(out, max)
    }

    fn in_flight(&self) -> usize {
        self.0.in_flight()
    }
}
