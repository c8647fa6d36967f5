export { mountRepository, type Mount, type MountOptions } from './mount.js';
